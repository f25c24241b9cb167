from training.trajectory.cli import main

raise SystemExit(main())
