"""An event-sourced application and an event-sourced projection (a process application that
records its events together with the position it has processed) on esdb.

    esdb node start --detach
    PERSISTENCE_MODULE=esdb_node.eventsourcing ESDB_URL=esdb://127.0.0.1:2113 \
        python docs/examples/bank.py

Nothing in here names esdb: the two environment variables choose the persistence module.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.projection import EventSourcedProjection, EventSourcedProjectionRunner
from eventsourcing.utils import get_topic


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = Decimal("0.00")

    @event("Deposited")
    def deposit(self, amount: Decimal) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    # every second event of an account, a snapshot (stream Bank.snapshots-<account id>)
    snapshotting_intervals = {Account: 2}

    def open_account(self, owner: str) -> UUID:
        account = Account(owner)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: Decimal) -> int:
        """Returns the notification id of the deposit."""
        account: Account = self.repository.get(account_id)
        account.deposit(amount)
        return self.save(account)[-1].notification.id

    def balance(self, account_id: UUID) -> Decimal:
        account: Account = self.repository.get(account_id)
        return account.balance


class Tally(Aggregate):
    """The deposits into one account, as the projection counts them."""

    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/tallies/{account_id}")

    @event("Started")
    def __init__(self, account_id: UUID) -> None:
        self.count = 0
        self.total = Decimal("0.00")

    @event("Counted")
    def add(self, amount: Decimal) -> None:
        self.count += 1
        self.total += amount


class Tallies(EventSourcedProjection[UUID]):
    """Follows the bank's deposits (only those: the topics filter is applied by esdb). Each
    tally's new events and the tracking record of the deposit that caused them are written
    in one atomic esdb append: a crash never counts a deposit twice or loses one."""

    topics = (get_topic(Account.Deposited),)

    @singledispatchmethod
    def policy(self, domain_event: object, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(self, domain_event: Account.Deposited, processing_event: ProcessingEvent[UUID]) -> None:
        try:
            tally: Tally = self.repository.get(Tally.create_id(domain_event.originator_id))
        except AggregateNotFoundError:
            tally = Tally(domain_event.originator_id)
        tally.add(domain_event.amount)
        processing_event.collect_events(tally)

    def tally(self, account_id: UUID) -> Tally:
        tally: Tally = self.repository.get(Tally.create_id(account_id))
        return tally


def main() -> None:
    with EventSourcedProjectionRunner(application_class=Bank, projection_class=Tallies) as runner:
        bank = runner.app
        account_id = bank.open_account("Alice")
        for amount in ("10.00", "25.00", "30.00"):
            last = bank.deposit(account_id, Decimal(amount))
        runner.wait(last, timeout=10)  # until the projection has tracked that notification
        tally = runner.projection.tally(account_id)
        print(f"account {account_id}: balance {bank.balance(account_id)}")
        print(f"tally: {tally.count} deposits, {tally.total} in total")


if __name__ == "__main__":
    main()
