from mlxgen.cli import main

main()
