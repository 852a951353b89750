"""What scores and explains a fitted detector."""
