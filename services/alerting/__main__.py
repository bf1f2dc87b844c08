from libs.service import run_service
from services.alerting.app import main

if __name__ == "__main__":
    run_service("alerting", main)
