from libs.service import run_service
from services.autoscaler.app import main

if __name__ == "__main__":
    run_service("autoscaler", main)
