"""tiny-r1v: LIPO training and AMM merging of small vision-language reasoning experts."""
