from fgcli.cli import main

main()
