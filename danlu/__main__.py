from danlu.cli import main

main()
