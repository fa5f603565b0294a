"""Feature trunks shared by the GAIN classifier and the SEC network."""
