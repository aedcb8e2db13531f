from trustboot.cli.main import main

main()
