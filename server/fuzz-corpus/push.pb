
fuzz 2•Ô±‘"payload