from training.embedding.cli import main

raise SystemExit(main())
