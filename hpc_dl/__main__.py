from hpc_dl.cli import main

raise SystemExit(main())
