import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from standin import dynamo_worker

dynamo_worker(sys.argv[1:])
