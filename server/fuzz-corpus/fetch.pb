
fuzz 0