from tgdl.gateway.app import main

main()
