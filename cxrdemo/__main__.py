from cxrdemo.cli import main

raise SystemExit(main())
