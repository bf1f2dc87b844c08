from libs.service import run_service
from services.metrics.app import main

if __name__ == "__main__":
    run_service("metrics", main)
