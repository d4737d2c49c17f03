from ina.embedded.vader import movie_review_sentences


def test_movie_review_sentences_are_the_ground_truth_file():
    rows = movie_review_sentences()
    assert len(rows) == 10605
    sentence, rating = rows[2]
    assert sentence == "Effective but too tepid biopic"
    assert rating == -0.6
    assert all(-4.0 <= r <= 4.0 for _, r in rows)
    assert all(s for s, _ in rows)
    rows.clear()  # each call returns a fresh list
    assert len(movie_review_sentences()) == 10605
