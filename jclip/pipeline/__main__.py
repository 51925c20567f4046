from .cascade import main

main()
