from esdb_cli.main import run

run()
