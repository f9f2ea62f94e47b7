"""`la-edge eval`: principle adherence, fluency and personal-preference accuracy of Linear Alignment."""
