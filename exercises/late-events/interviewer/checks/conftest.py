"""Hidden checks run with the candidate's tree as cwd and PYTHONPATH."""
