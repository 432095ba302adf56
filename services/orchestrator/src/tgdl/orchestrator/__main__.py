from tgdl.orchestrator.app import main

main()
