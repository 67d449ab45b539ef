from manualrag.cli import main

main()
