from modelprove.cli.main import main

main()
