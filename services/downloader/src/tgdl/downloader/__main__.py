from tgdl.downloader.app import main

main()
