"""The exported model's layout: SavedModel versions in TF Serving's folders, push and load."""
