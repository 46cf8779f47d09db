

lstm
nwords	@RÐ
words	@ÐBx