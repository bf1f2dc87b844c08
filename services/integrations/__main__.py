from libs.service import run_service
from services.integrations.app import main

if __name__ == "__main__":
    run_service("integrations", main)
