"""Evented application state that the views subscribe to. No Qt."""
