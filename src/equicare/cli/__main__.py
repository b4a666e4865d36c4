"""``python -m equicare.cli``: the same as the ``equicare`` script."""

from equicare.cli import main

main()
