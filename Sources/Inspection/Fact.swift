// `Fact` lives in WardenCore (one type for guest facts and policy facts).
