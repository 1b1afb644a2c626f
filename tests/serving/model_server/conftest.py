"""The model server's tests; this folder's helpers (hostile.py, tf_serving_models.py) are
importable from its subfolders because pytest puts a conftest's folder on sys.path."""
