from farmbench.cli import main

main()
