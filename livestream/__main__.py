from livestream.cli import main

raise SystemExit(main())
