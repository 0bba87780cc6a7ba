
fuzz 