from tagrun.server.cli import main

main()
