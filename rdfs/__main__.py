from rdfs.cli import main

raise SystemExit(main())
