"""`python -m energy_cli ...` is the same program as the `energy-ood` console script."""

from energy_cli.cli import main

if __name__ == "__main__":
    main()
