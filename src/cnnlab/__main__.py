"""`python -m cnnlab ...` (and `torchrun -m cnnlab train ...`) run the command line."""

from cnnlab.cli import main

raise SystemExit(main())
