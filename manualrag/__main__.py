from manualrag.cli import run

run()
