from libs.service import run_service
from services.scheduler.app import main

if __name__ == "__main__":
    run_service("scheduler", main)
