"""An algorithm from outside rl-runner: a class (algo.py) and its YAML (conf/algo/myalgo.yaml)."""
