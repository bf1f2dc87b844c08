from libs.service import run_service
from services.spec_registry.app import main

if __name__ == "__main__":
    run_service("spec_registry", main)
