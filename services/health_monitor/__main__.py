from libs.service import run_service
from services.health_monitor.app import main

if __name__ == "__main__":
    run_service("health_monitor", main)
