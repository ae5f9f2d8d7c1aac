from alignx_demo.cli import main

raise SystemExit(main())
