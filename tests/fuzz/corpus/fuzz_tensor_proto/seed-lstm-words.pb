

lstm
nwords:3
words*Bå¾ˆBÿB<pad>Bå¾ˆBÿB<pad>