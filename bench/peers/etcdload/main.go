// etcdload: the etcd loader for bench/compare.py (etcd's tools/benchmark is not packaged
// in Debian). Taken from the peer baselines' loader (shared/bench-peers/etcdload) and
// extended with batches, a read mode, a failover probe, a warm-up, and its own CPU time.
//
// Modes (each prints one JSON line):
//
//	put:      -c workers spread over -conns gRPC connections, each issuing sequential
//	          requests until -total requests or -warmup + -maxsec seconds. A request is one
//	          Put (-batch 1) or one Txn of -batch Puts. Keys are -prefix + 8-digit sequence,
//	          values -vsize random bytes. Only requests completing after the warm-up count.
//	read:     every key, decoded by the client, at most -limit: -read range is one Range
//	          (etcd 3.4's fastest full read), pages is Ranges of 1000 (each page walks the
//	          index of the whole remaining range on 3.4, so the read is quadratic), watch is
//	          one Watch from revision 1 up to the revision current at the start (etcd's
//	          stream of every write, in order).
//	failover: connect to -endpoints, print "ready", wait for a line on stdin (sent right
//	          after the leader's SIGKILL), then start a Put every 20 ms (each with a 1 s
//	          timeout) until one is acknowledged; print its wall time in ns.
//
// Built offline in GOPATH mode against Debian's golang-etcd-server-dev (bench/peers/etcd.py).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func emit(v map[string]interface{}) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func dial(eps string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(eps, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return c
}

func main() {
	mode := flag.String("mode", "put", "put | read | failover")
	eps := flag.String("endpoints", "127.0.0.1:2379", "comma separated")
	conc := flag.Int("c", 1, "concurrent workers")
	conns := flag.Int("conns", 1, "gRPC client connections (workers spread across them)")
	total := flag.Int("total", 20000, "max requests")
	maxsec := flag.Float64("maxsec", 10, "measured seconds (read: max seconds)")
	warmup := flag.Float64("warmup", 0, "seconds before measuring")
	vsize := flag.Int("vsize", 100, "value size")
	batch := flag.Int("batch", 1, "puts per request (a Txn when > 1)")
	limit := flag.Int("limit", 100000, "read: max keys")
	how := flag.String("read", "range", "read: range (one Range of every key) | pages (Ranges of 1000) | watch (from revision 1)")
	prefix := flag.String("prefix", "k", "key prefix")
	flag.Parse()

	val := make([]byte, *vsize)
	rand.Read(val)
	sval := string(val)
	switch *mode {
	case "put":
		put(*eps, *conc, *conns, *total, *maxsec, *warmup, *batch, *prefix, sval)
	case "read":
		read(*eps, *how, *limit, *maxsec)
	case "failover":
		failover(*eps, *prefix, sval)
	default:
		fmt.Fprintln(os.Stderr, "unknown -mode", *mode)
		os.Exit(2)
	}
}

func put(eps string, conc, conns, total int, maxsec, warmup float64, batch int, prefix, sval string) {
	clients := make([]*clientv3.Client, conns)
	for i := range clients {
		clients[i] = dial(eps)
	}
	var seq int64 = -1
	var errs int64
	lats := make([][]time.Duration, conc)
	start := time.Now()
	from := start.Add(time.Duration(warmup * float64(time.Second)))
	deadline := from.Add(time.Duration(maxsec * float64(time.Second)))
	var cpu0 float64
	go func() { time.Sleep(time.Until(from)); cpu0 = cpuSeconds() }()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cli := clients[w%len(clients)]
			for {
				n := atomic.AddInt64(&seq, 1)
				if n >= int64(total) || time.Now().After(deadline) {
					return
				}
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var err error
				if batch == 1 {
					_, err = cli.Put(ctx, fmt.Sprintf("%s%08d", prefix, n), sval)
				} else {
					ops := make([]clientv3.Op, batch)
					for i := range ops {
						ops[i] = clientv3.OpPut(fmt.Sprintf("%s%08d", prefix, n*int64(batch)+int64(i)), sval)
					}
					_, err = cli.Txn(ctx).Then(ops...).Commit()
				}
				cancel()
				t1 := time.Now()
				if t1.Before(from) || t1.After(deadline) {
					continue
				}
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				lats[w] = append(lats[w], t1.Sub(t0))
			}
		}(w)
	}
	wg.Wait()
	end := time.Now()
	if end.After(deadline) {
		end = deadline
	}
	cpu := cpuSeconds() - cpu0
	el := end.Sub(from).Seconds()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p*float64(len(all)-1) + 0.5)
		return float64(all[i].Microseconds()) / 1000.0
	}
	emit(map[string]interface{}{
		"ops": len(all), "events": len(all) * batch, "errors": errs, "seconds": el,
		"p50_ms": pct(0.50), "p99_ms": pct(0.99), "cpu_s": cpu,
	})
	for _, c := range clients {
		c.Close()
	}
}

func read(eps, how string, limit int, maxsec float64) {
	cli := dial(eps)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(maxsec*float64(time.Second)))
	defer cancel()
	// the newest revision now: a watch ends when it has delivered it
	head, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	last := head.Header.Revision
	cpu0 := cpuSeconds()
	t0 := time.Now()
	n, bytes := 0, 0
	complete := false
	switch how {
	case "range", "pages":
		page := limit
		if how == "pages" {
			page = 1000
		}
		key := "\x00"
		for n < limit {
			want := limit - n
			if want > page {
				want = page
			}
			resp, err := cli.Get(ctx, key, clientv3.WithFromKey(), clientv3.WithLimit(int64(want)))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			for _, kv := range resp.Kvs {
				bytes += len(kv.Key) + len(kv.Value)
			}
			n += len(resp.Kvs)
			if len(resp.Kvs) == 0 || !resp.More {
				break
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		complete = true
	case "watch":
		wch := cli.Watch(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(1))
		for wresp := range wch {
			if err := wresp.Err(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			for _, ev := range wresp.Events {
				bytes += len(ev.Kv.Key) + len(ev.Kv.Value)
				n++
				if n >= limit || ev.Kv.ModRevision >= last {
					complete = true
					break
				}
			}
			if complete {
				break
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown -read", how)
		os.Exit(2)
	}
	el := time.Since(t0).Seconds()
	emit(map[string]interface{}{
		"events": n, "bytes": bytes, "seconds": el, "cpu_s": cpuSeconds() - cpu0,
		"complete": complete,
	})
}

func failover(eps, prefix, sval string) {
	cli := dial(eps)
	defer cli.Close()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Exit(1)
	}
	acked := make(chan int64, 1)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; time.Now().Before(deadline); i++ {
		go func(i int) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, fmt.Sprintf("%sfailover%08d", prefix, i), sval); err == nil {
				select {
				case acked <- time.Now().UnixNano():
				default:
				}
			}
		}(i)
		select {
		case ns := <-acked:
			emit(map[string]interface{}{"acked_ns": ns, "attempts": i + 1})
			return
		case <-tick.C:
		}
	}
	fmt.Fprintln(os.Stderr, "no acknowledged put within 30 s")
	os.Exit(1)
}
