"""{{ cookiecutter.project }}: one model and one data pipeline, trained by a plain PyTorch loop
(`engines/raw.py`) and by Lightning (`engines/lightning.py`), side by side."""

PROJECT_NAME = {{ cookiecutter.project_name | python_string }}
__version__ = "0.1.0"
