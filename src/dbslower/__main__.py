from dbslower.cli import main

raise SystemExit(main())
