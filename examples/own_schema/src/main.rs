//! Publishes two cycles of a user's own types (`schema/library.capnp`) to a
//! temporary local store and reads them back by key, checking every answer.
//! `cargo run -p own-schema` (burrow's `.ci/run` runs it).

use burrow::blobstore::BlobStore;
use burrow::consumer::ConsumerBuilder;
use burrow::producer::{Populate, ProducerBuilder};

/// The code capnpc generated from schema/library.capnp.
#[allow(clippy::all, unused)]
mod library_capnp {
    include!(concat!(env!("OUT_DIR"), "/library_capnp.rs"));
}
use library_capnp::{book, loan};

/// One book: (isbn, title, author, year).
type BookRow = (&'static str, &'static str, &'static str, u16);
/// One loan: (branch, copy, isbn, borrower, due day).
type LoanRow = (&'static str, u32, &'static str, &'static str, u32);

fn add_all(p: &mut Populate<'_>, books: &[BookRow], loans: &[LoanRow]) -> burrow::Result<()> {
    for &(isbn, title, author, year) in books {
        p.add::<book::Owned>(|mut b| {
            b.set_isbn(isbn);
            b.set_title(title);
            b.set_author(author);
            b.set_year(year);
            Ok(())
        })?;
    }
    for &(branch, copy, isbn, borrower, due_day) in loans {
        p.add::<loan::Owned>(|mut l| {
            l.set_branch(branch);
            l.set_copy(copy);
            l.set_isbn(isbn);
            l.set_borrower(borrower);
            l.set_due_day(due_day);
            Ok(())
        })?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = BlobStore::local(dir.path().join("store"))?;
    let producer = ProducerBuilder::new(store.clone())
        .producer_id("library-producer")
        .primary_key::<book::Owned>(&["isbn"])
        .primary_key::<loan::Owned>(&["branch", "copy"])
        .build()?;
    let consumer = ConsumerBuilder::new(store)
        .cache_dir(dir.path().join("cache"))
        .build()?;

    // Cycle 1.
    let mut books = vec![
        ("978-0-14-118776-1", "Middlemarch", "George Eliot", 1871),
        ("978-0-19-953556-9", "Bleak House", "Charles Dickens", 1853),
    ];
    let mut loans = vec![
        ("central", 1, "978-0-14-118776-1", "ada", 20),
        ("central", 2, "978-0-14-118776-1", "grace", 22),
        ("harbour", 1, "978-0-19-953556-9", "alan", 21),
    ];
    let first = producer.run_cycle(|p| add_all(p, &books, &loans)).await?;
    assert!(first.published);
    consumer.refresh().await?;
    {
        let state = consumer.state()?;
        assert_eq!(state.version(), first.version);
        let (_, middlemarch) = state
            .view::<book::Owned>()?
            .find("978-0-14-118776-1")?
            .expect("Middlemarch was published");
        assert_eq!(middlemarch.get_title()?.to_str()?, "Middlemarch");
        let (_, loan) = state
            .view::<loan::Owned>()?
            .find(&("central", 2u32))?
            .expect("central copy 2 is on loan");
        assert_eq!(loan.get_borrower()?.to_str()?, "grace");
    }

    // Cycle 2: a book added, a loan returned, a loan extended.
    books.push((
        "978-0-14-043951-3",
        "North and South",
        "Elizabeth Gaskell",
        1855,
    ));
    loans.retain(|l| (l.0, l.1) != ("central", 1));
    loans[0].4 = 29; // central copy 2: due later
    let second = producer.run_cycle(|p| add_all(p, &books, &loans)).await?;
    assert!(second.published && second.version > first.version);
    let report = consumer.refresh().await?.expect("the consumer moves");
    assert_eq!(report.to, second.version);

    let state = consumer.state()?;
    let book_view = state.view::<book::Owned>()?;
    let loan_view = state.view::<loan::Owned>()?;
    assert_eq!(book_view.len(), 3);
    assert_eq!(loan_view.len(), 2);
    let (_, gaskell) = book_view
        .find("978-0-14-043951-3")?
        .expect("the new book is there");
    assert_eq!(gaskell.get_author()?.to_str()?, "Elizabeth Gaskell");
    assert!(loan_view.find(&("central", 1u32))?.is_none(), "returned");
    let (_, extended) = loan_view.find(&("central", 2u32))?.expect("still on loan");
    assert_eq!(extended.get_due_day(), 29);
    assert!(
        loan_view.find(&("harbour", 2u32))?.is_none(),
        "no such copy"
    );

    println!(
        "own-schema: published versions {} and {}; {} books and {} loans read back by key",
        first.version,
        second.version,
        book_view.len(),
        loan_view.len()
    );
    Ok(())
}
