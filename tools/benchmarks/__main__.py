from tools.benchmarks.run import main

main()
