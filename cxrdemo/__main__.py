from cxrdemo.app.cli import main

raise SystemExit(main())
